"""The test suite. It registers the test-only analyses (``test``, ``noop``) of
``pacs.jobs.registry`` for itself and every process it starts."""

import os

os.environ["PACS_TEST_ANALYSES"] = "1"
