"""Two-stage router (CoE): a trained category classifier, then a category -> expert map."""

from routers.two_stage.artifact import ArtifactError, load_artifact
from routers.two_stage.router import TwoStageRouter
from routers.two_stage.train import calibrate_tau, train_two_stage

__all__ = ["ArtifactError", "TwoStageRouter", "calibrate_tau", "load_artifact", "train_two_stage"]
