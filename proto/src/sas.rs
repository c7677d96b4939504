//! DPS shared-access-signature tokens (dps-protocol §2).
