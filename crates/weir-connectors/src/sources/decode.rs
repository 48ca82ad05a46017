//! TODO(helper): decode
