//! Per-device keys derived from enrollment-group keys (dps-protocol §2).
