# Shared rules of the Microvisor-compat conformance apps. A Makefile sets APP and HERE, then
# includes this. Build with `make -C <dir>` or `make -C <dir> BUILD=/abs/outdir`; the output is
# $(BUILD)/$(APP).elf (`make bin` for the flat image). Extra defines: DEFS="-DURL=\"...\"".

ifeq ($(origin CC),default)
CC := arm-none-eabi-gcc
endif
CC ?= arm-none-eabi-gcc
OBJCOPY ?= arm-none-eabi-objcopy

BUILD ?= build

COMMON := $(abspath $(HERE)../common)
COMPAT := $(abspath $(HERE)../..)
SDK    := $(abspath $(COMPAT)/..)

SRCS := $(HERE)main.c $(COMMON)/mv_board.c $(COMPAT)/mv_compat.c $(SDK)/keel_crt0.c
OBJDIR := $(BUILD)/$(APP)
OBJS := $(addprefix $(OBJDIR)/,$(notdir $(SRCS:.c=.o)))

ARCH    := -mcpu=cortex-m33 -mthumb -mfloat-abi=soft
CFLAGS  ?= -Os -g
CFLAGS  += $(ARCH) -std=c11 -ffreestanding -nostdlib -ffunction-sections -fdata-sections \
           -Wall -Wextra -Werror -MMD -MP $(DEFS)
# The app sees only the compat API (and its board layer); mv_compat.c also sees Keel's headers.
APP_INC    := -I$(COMPAT) -I$(COMMON)
COMPAT_INC := -I$(COMPAT) -I$(SDK)/include
LDFLAGS += $(ARCH) -nostdlib -T $(SDK)/keel_app.ld -Wl,--gc-sections \
           -Wl,-Map=$(BUILD)/$(APP).map
LDLIBS  += -lgcc

.PHONY: all bin clean
all: $(BUILD)/$(APP).elf

bin: $(BUILD)/$(APP).bin

$(BUILD)/$(APP).elf: $(OBJS) $(SDK)/keel_app.ld
	$(CC) $(LDFLAGS) -o $@ $(OBJS) $(LDLIBS)

$(BUILD)/$(APP).bin: $(BUILD)/$(APP).elf
	$(OBJCOPY) -O binary $< $@

$(OBJDIR)/main.o: $(HERE)main.c | $(OBJDIR)
	$(CC) $(CFLAGS) $(APP_INC) -c -o $@ $<

$(OBJDIR)/mv_board.o: $(COMMON)/mv_board.c | $(OBJDIR)
	$(CC) $(CFLAGS) $(APP_INC) -c -o $@ $<

$(OBJDIR)/mv_compat.o: $(COMPAT)/mv_compat.c | $(OBJDIR)
	$(CC) $(CFLAGS) $(COMPAT_INC) -c -o $@ $<

$(OBJDIR)/keel_crt0.o: $(SDK)/keel_crt0.c | $(OBJDIR)
	$(CC) $(CFLAGS) -I$(SDK)/include -c -o $@ $<

$(OBJDIR):
	mkdir -p $@

clean:
	rm -rf $(OBJDIR) $(BUILD)/$(APP).elf $(BUILD)/$(APP).bin $(BUILD)/$(APP).map

-include $(OBJS:.o=.d)
