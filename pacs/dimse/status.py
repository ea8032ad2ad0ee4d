"""DIMSE status codes, one name each (PS3.7 Annex C; service-specific codes from PS3.4).

The general statuses are PS3.7 C.1-C.5; the failure and warning codes of the Storage,
Query/Retrieve and Modality Worklist services are named as PS3.4 B.2.3, C.4 and K.4 name
them (one code has two names where the two services word it differently). STOW-RS reports
the same codes as its FailureReason and WarningReason (PS3.18 table 10.5.3-2).
"""

from __future__ import annotations

SUCCESS = 0x0000
"""PS3.7 C.1: the operation succeeded."""

PENDING = 0xFF00
"""PS3.7 C.2: a match or sub-operation follows; more responses come."""

PENDING_OPTIONAL_KEYS_NOT_SUPPORTED = 0xFF01
"""PS3.4 C.4.1: pending, but one or more optional keys were not supported."""

PENDING_STATUSES = frozenset({PENDING, PENDING_OPTIONAL_KEYS_NOT_SUPPORTED})

CANCEL = 0xFE00
"""PS3.7 C.3: the operation was cancelled (C-CANCEL)."""

# ------------------------------------------------------------------------------ warnings

ATTRIBUTE_LIST_ERROR = 0x0107
"""PS3.7 C.4: Attribute List Error."""

ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
"""PS3.7 C.4: Attribute Value Out of Range."""

COERCION_OF_DATA_ELEMENTS = 0xB000
"""PS3.4 B.2.3: stored, but data elements were coerced."""

DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
"""PS3.4 B.2.3: stored, though the data set does not match the SOP class."""

ELEMENTS_DISCARDED = 0xB006
"""PS3.4 B.2.3: stored, but elements were discarded."""

STORE_WARNINGS = frozenset(
    {
        COERCION_OF_DATA_ELEMENTS,
        ELEMENTS_DISCARDED,
        DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING,
        ATTRIBUTE_LIST_ERROR,
        ATTRIBUTE_VALUE_OUT_OF_RANGE,
    }
)
"""The warning statuses a C-STORE response may carry."""

# ------------------------------------------------------------------------------ failures

PROCESSING_FAILURE = 0x0110
"""PS3.7 C.5: Processing Failure."""

DUPLICATE_SOP_INSTANCE = 0x0111
"""PS3.7 C.5: Duplicate SOP Instance (stored already, with other content)."""

SOP_CLASS_NOT_SUPPORTED = 0x0122
"""PS3.7 C.5 / PS3.4 B.2.3: Refused, SOP Class not supported."""

OUT_OF_RESOURCES = 0xA700
"""PS3.4 B.2.3 / C.4: refused, out of resources."""

DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
"""PS3.4 B.2.3: error, the data set does not match the SOP class."""

IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = DATA_SET_DOES_NOT_MATCH_SOP_CLASS
"""PS3.4 C.4: the same code for a C-FIND/C-MOVE/C-GET identifier."""

CANNOT_UNDERSTAND = 0xC000
"""PS3.4 B.2.3: error, the data set cannot be understood."""

UNABLE_TO_PROCESS = CANNOT_UNDERSTAND
"""PS3.4 C.4: the same code for a query or retrieve that could not be processed."""
