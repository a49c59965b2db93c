"""Generated protobuf code; see service.protogen."""
