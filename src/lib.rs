//! skiff
