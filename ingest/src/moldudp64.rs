//! Module under construction.
