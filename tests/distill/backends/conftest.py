"""The backend tests run the runtime-stable tiny model that the eval tests build."""

from tests.eval.conftest import exported, stable_model  # noqa: F401  (fixtures)
