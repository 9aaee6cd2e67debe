/*
 * mv_board.h - the small "board layer" the Microvisor-compat conformance apps share: a SysTick
 * wake-up (so that waits with WFI can time out), a printf-like mvServerLog() wrapper, the
 * network bring-up, and string and waiting helpers. On Microvisor this is the part an app gets
 * from the ST HAL; porting an app to Keel means replacing it (see ../../README.md). Uses only
 * mv_syscalls.h.
 */
#ifndef MV_BOARD_H
#define MV_BOARD_H

#include <stdint.h>

#include "mv_syscalls.h"

/** Starts the 100 Hz SysTick wake-up and server logging. */
void board_init(void);

/** Logs one line: %s, %u, %d, %x, %c and %.*s (int length, then the bytes); at most 480 bytes. */
void board_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/** Milliseconds since the visor started (mvGetMicroseconds()). */
uint32_t board_ms(void);

/** Sleeps until an interrupt (at most 10 ms, the SysTick period). */
void board_sleep(void);

/** Waits until *flag != 0, *stop != 0 or `timeout_ms` passed; returns *flag. */
uint32_t board_wait_flag(volatile uint32_t *flag, volatile uint32_t *stop, uint32_t timeout_ms);

/** Waits until the network of `net` is CONNECTED or `timeout_ms` passed; 1 if connected. */
int board_wait_connected(MvNetworkHandle net, uint32_t timeout_ms);

/** Sets up the notification buffer `setup`, requests the network (its records tagged `net_tag`)
 *  and waits up to `timeout_ms` for it to connect. Returns NULL, or the step that failed
 *  ("mvSetupNotifications", "mvRequestNetwork", "network") with its status in *st. */
const char *board_connect(const struct MvNotificationSetup *setup, uint32_t net_tag, uint32_t timeout_ms,
                          MvNotificationHandle *nh, MvNetworkHandle *net, enum MvStatus *st);

/** The NUL-terminated string `s` as an MvSizedString (without the NUL). */
struct MvSizedString board_str(const char *s);

/** Stops here for good (logs nothing). */
void board_idle(void) __attribute__((noreturn));

#endif
