# Keel C apps: the cross toolchain, the CPU and C flags, and the link rules with keel_app.ld.
#
# A Makefile sets APP (the output's name) and OBJS (its object files, in $(BUILD)/$(APP)/, with
# $(BUILD)/$(APP)/keel_crt0.o among them), optionally BUILD (the output directory, default
# `build`) and CFLAGS (default -Os -g), includes this file, and then gives the rules that
# compile its own objects with $(KEEL_CFLAGS):
#
#     APP  := my-app
#     HERE := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
#     SDK  := $(abspath $(HERE)path/to/sdk/c)
#     BUILD ?= build
#     OBJS := $(BUILD)/$(APP)/main.o $(BUILD)/$(APP)/keel_crt0.o
#     include $(SDK)/keel_app.mk
#     $(BUILD)/$(APP)/main.o: $(HERE)main.c | $(BUILD)/$(APP)
#     	$(CC) $(KEEL_CFLAGS) -Wall -I$(SDK)/include -c -o $@ $<
#
# It provides `all` ($(BUILD)/$(APP).elf, the default goal), `bin` ($(BUILD)/$(APP).bin, the flat
# image), the link map $(BUILD)/$(APP).map, keel_crt0.o, the object directory and `clean`.
# Extra link flags: LDFLAGS, LDLIBS.

# CC ?= arm-none-eabi-gcc, except that make predefines CC=cc, so `?=` alone would never
# apply: use the cross compiler unless CC was given on the command line or environment.
ifeq ($(origin CC),default)
CC := arm-none-eabi-gcc
endif
CC      ?= arm-none-eabi-gcc
OBJCOPY ?= arm-none-eabi-objcopy

BUILD  ?= build
CFLAGS ?= -Os -g

KEEL_SDK    := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
KEEL_ARCH   := -mcpu=cortex-m33 -mthumb -mfloat-abi=soft
# Freestanding C11 for the non-secure Cortex-M33, each function in its own section (the link
# drops what is not used), header dependencies for make. Add -I flags of your own.
KEEL_CFLAGS  = $(CFLAGS) $(KEEL_ARCH) -std=c11 -ffreestanding -nostdlib -ffunction-sections \
               -fdata-sections -MMD -MP

LDFLAGS += $(KEEL_ARCH) -nostdlib -T $(KEEL_SDK)/keel_app.ld -Wl,--gc-sections \
           -Wl,-Map=$(BUILD)/$(APP).map
LDLIBS  += -lgcc

.PHONY: all bin clean
all: $(BUILD)/$(APP).elf

bin: $(BUILD)/$(APP).bin

$(BUILD)/$(APP).elf: $(OBJS) $(KEEL_SDK)/keel_app.ld
	$(CC) $(LDFLAGS) -o $@ $(OBJS) $(LDLIBS)

$(BUILD)/$(APP).bin: $(BUILD)/$(APP).elf
	$(OBJCOPY) -O binary $< $@

# The SDK's start-up code (vector table, Reset_Handler).
$(BUILD)/$(APP)/keel_crt0.o: $(KEEL_SDK)/keel_crt0.c | $(BUILD)/$(APP)
	$(CC) $(KEEL_CFLAGS) -Wall -Wextra -Werror -I$(KEEL_SDK)/include -c -o $@ $<

$(BUILD)/$(APP):
	mkdir -p $@

clean:
	rm -rf $(BUILD)/$(APP) $(BUILD)/$(APP).elf $(BUILD)/$(APP).bin $(BUILD)/$(APP).map

-include $(OBJS:.o=.d)
