//! A user-space stand-in for cuts, for host tests (written by the daemon work).
