# Shared rules of the FreeRTOS example apps (freertos-stress, freertos-channels). A Makefile sets
# APP and HERE, includes this, then adds its own flags to APP_CFLAGS / PORT_CFLAGS. Build with
# `make -C <dir>` or `make -C <dir> BUILD=/abs/outdir`; the output is $(BUILD)/$(APP).elf
# (`make bin` for the flat image).
#
# The FreeRTOS kernel comes from the `freertos-next` crate on crates.io (see
# freertos-stress/README.md): cargo downloads it (pinned in freertos-stress/kernel/Cargo.toml
# and Cargo.lock) and `cargo metadata` tells where. Give FREERTOS_KERNEL=/path/to/FreeRTOS-Kernel
# to use another copy of the kernel. Each app's FreeRTOSConfig.h sets what differs and includes
# freertos-config-common.h (here) for the rest.

CARGO ?= cargo

BUILD ?= build

EXAMPLES   := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
SDK        := $(abspath $(EXAMPLES)/..)
KERNEL_PKG := $(EXAMPLES)/freertos-stress/kernel

ifndef FREERTOS_KERNEL
FREERTOS_CRATE := $(shell $(CARGO) metadata --locked --format-version 1 \
    --manifest-path $(KERNEL_PKG)/Cargo.toml 2>/dev/null \
    | grep -o '"manifest_path":"[^"]*/freertos-next-[0-9][^"/]*/Cargo.toml"' | head -n 1 \
    | sed -e 's/^"manifest_path":"//' -e 's|/Cargo.toml"$$||')
ifeq ($(FREERTOS_CRATE),)
$(error could not locate the freertos-next crate: run `cargo metadata --locked --manifest-path $(KERNEL_PKG)/Cargo.toml` to see why, or pass FREERTOS_KERNEL=/path/to/FreeRTOS-Kernel)
endif
FREERTOS_KERNEL := $(FREERTOS_CRATE)/FreeRTOS-Kernel
endif
PORT := $(FREERTOS_KERNEL)/portable/GCC/ARM_CM33_NTZ/non_secure

APP_SRCS    := $(HERE)main.c $(SDK)/keel_crt0.c
KERNEL_SRCS := $(FREERTOS_KERNEL)/tasks.c $(FREERTOS_KERNEL)/list.c $(FREERTOS_KERNEL)/queue.c
PORT_SRCS   := $(PORT)/port.c $(PORT)/portasm.c

APP_OBJS    := $(addprefix $(BUILD)/$(APP)/,$(notdir $(APP_SRCS:.c=.o)))
KERNEL_OBJS := $(addprefix $(BUILD)/$(APP)/freertos/,$(notdir $(KERNEL_SRCS:.c=.o)))
PORT_OBJS   := $(addprefix $(BUILD)/$(APP)/freertos/,$(notdir $(PORT_SRCS:.c=.o)))
OBJS        := $(APP_OBJS) $(KERNEL_OBJS) $(PORT_OBJS)

include $(SDK)/keel_app.mk

INCLUDES := -I$(HERE) -I$(EXAMPLES) -I$(SDK)/include -I$(FREERTOS_KERNEL)/include -I$(PORT)
# Our code: every warning is an error. The kernel: its own code, built as its demos are.
APP_CFLAGS     = $(KEEL_CFLAGS) $(INCLUDES) -Wall -Wextra -Werror
KERNEL_CFLAGS  = $(KEEL_CFLAGS) $(INCLUDES) -Wall
PORT_CFLAGS    = $(KERNEL_CFLAGS)

$(BUILD)/$(APP)/main.o: $(HERE)main.c | $(BUILD)/$(APP)/freertos
	$(CC) $(APP_CFLAGS) -c -o $@ $<

$(BUILD)/$(APP)/freertos/%.o: $(FREERTOS_KERNEL)/%.c | $(BUILD)/$(APP)/freertos
	$(CC) $(KERNEL_CFLAGS) -c -o $@ $<

$(BUILD)/$(APP)/freertos/%.o: $(PORT)/%.c | $(BUILD)/$(APP)/freertos
	$(CC) $(PORT_CFLAGS) -c -o $@ $<

$(BUILD)/$(APP)/freertos:
	mkdir -p $@
