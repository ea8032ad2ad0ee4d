"""CT analysis pipeline: series -> volume -> ONNX models -> DICOM SEG + SR."""
