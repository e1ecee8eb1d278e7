"""The lab the tests and the benchmarks share: hosts as network namespaces (`netlab`) and SIPp
peers in them (`sippy_runner`). Not part of the product: nothing in control/ imports it."""
