//! Online Retail CSV reader (work in progress)
