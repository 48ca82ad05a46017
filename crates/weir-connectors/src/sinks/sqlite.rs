//! TODO(helper): sqlite
