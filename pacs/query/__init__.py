"""C-FIND / QIDO-RS query matching over the index (PS3.4 C.2.2.2), independent of DIMSE."""

from pacs.query.errors import QueryError
from pacs.query.find import find
from pacs.query.keys import LEVELS, QueryModel

__all__ = ["LEVELS", "QueryError", "QueryModel", "find"]
