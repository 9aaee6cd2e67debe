# Shared rules of the Microvisor-compat conformance apps. A Makefile sets APP and HERE, then
# includes this. Build with `make -C <dir>` or `make -C <dir> BUILD=/abs/outdir`; the output is
# $(BUILD)/$(APP).elf (`make bin` for the flat image). Extra defines: DEFS="-DURL=\"...\"".
# Toolchain, flags and link rules: sdk/c/keel_app.mk.

COMMON := $(abspath $(HERE)../common)
COMPAT := $(abspath $(HERE)../..)
SDK    := $(abspath $(COMPAT)/..)

BUILD  ?= build
OBJDIR := $(BUILD)/$(APP)
OBJS   := $(addprefix $(OBJDIR)/,main.o mv_board.o mv_compat.o keel_crt0.o)

include $(SDK)/keel_app.mk

FLAGS := -Wall -Wextra -Werror $(DEFS)
# The app sees only the compat API (and its board layer); mv_compat.c also sees Keel's headers.
APP_INC    := -I$(COMPAT) -I$(COMMON)
COMPAT_INC := -I$(COMPAT) -I$(SDK)/include

$(OBJDIR)/main.o: $(HERE)main.c | $(OBJDIR)
	$(CC) $(KEEL_CFLAGS) $(FLAGS) $(APP_INC) -c -o $@ $<

$(OBJDIR)/mv_board.o: $(COMMON)/mv_board.c | $(OBJDIR)
	$(CC) $(KEEL_CFLAGS) $(FLAGS) $(APP_INC) -c -o $@ $<

$(OBJDIR)/mv_compat.o: $(COMPAT)/mv_compat.c | $(OBJDIR)
	$(CC) $(KEEL_CFLAGS) $(FLAGS) $(COMPAT_INC) -c -o $@ $<
