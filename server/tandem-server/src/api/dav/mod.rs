pub(crate) mod ls;
