//! The C ABI's tests, in one binary: the checked-in header against
//! cbindgen, a C program and a Python `ctypes` script over the shared
//! library, on the real model.

mod c_program;
mod common;
mod header;
mod python_ctypes;
