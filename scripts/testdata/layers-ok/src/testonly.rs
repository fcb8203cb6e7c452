use crate::top;
