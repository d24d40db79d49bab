"""SegXAL core library: data, models, EEM maths, metrics, codecs. No gRPC in here."""
