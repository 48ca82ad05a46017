//! TODO(helper): jq
