"""Data sets the product trains and profiles on, fetched as files from package registries and cached."""
