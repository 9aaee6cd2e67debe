//! QEMU integration tests: see tests/qemu/*.rs (compiled with --features qemu-tests).
