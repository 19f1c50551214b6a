"""The study database: slimtune's tables beside Optuna's; create / load / resume;
frontier; select; export."""

from slimtune.studies._candidate import Candidate
from slimtune.studies._database import DEFAULT_STORAGE, Database, mask_url
from slimtune.studies._errors import NoCandidateError, SchemaVersionError, StudyError
from slimtune._dominance import DEFAULT_OBJECTIVES, OBJECTIVES, hypervolume, non_dominated, non_dominated_mask
from slimtune.studies._schema import SCHEMA_VERSION
from slimtune.studies._listing import list_studies
from slimtune.studies._study import Study

__all__ = [
    "Candidate",
    "DEFAULT_OBJECTIVES",
    "DEFAULT_STORAGE",
    "Database",
    "NoCandidateError",
    "OBJECTIVES",
    "SCHEMA_VERSION",
    "SchemaVersionError",
    "Study",
    "StudyError",
    "hypervolume",
    "list_studies",
    "mask_url",
    "non_dominated",
    "non_dominated_mask",
]
