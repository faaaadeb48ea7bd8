"""The bottom floor: schemas, the registry loader, settings, assets and weights. Imports nothing of the project."""
