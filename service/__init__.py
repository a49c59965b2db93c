"""The gRPC front end of samplerd: decoding, validation, dispatch, metrics, health, CLI."""
