//! gomail's integration tests: one binary, themed modules, real sockets,
//! real clients (lettre, swaks, raw bytes) and the real `gomail` process.

mod it;
