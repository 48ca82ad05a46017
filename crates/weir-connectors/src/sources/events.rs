//! TODO(helper): events
