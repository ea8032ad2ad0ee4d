"""Test and benchmark kit: synthetic DICOM data, reference peers (Orthanc), archives for the
analysis pipeline. Shared by ``tests/`` and ``bench/``; production code never imports it."""
