//! TODO(helper): stdout
