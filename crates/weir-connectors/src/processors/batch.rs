//! TODO(helper): batch
