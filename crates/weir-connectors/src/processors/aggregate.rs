//! TODO(helper): aggregate
