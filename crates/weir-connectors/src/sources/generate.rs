//! TODO(helper): generate
