//! Empty: this package only pins the `freertos-next` crate, whose bundled FreeRTOS-Kernel C
//! sources the `freertos-stress` example compiles (see Cargo.toml and ../README.md).
