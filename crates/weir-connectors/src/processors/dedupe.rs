//! TODO(helper): dedupe
