//! TODO(helper): filter
