//! TODO(helper): file
