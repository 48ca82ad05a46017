//! TODO(helper): stdin
