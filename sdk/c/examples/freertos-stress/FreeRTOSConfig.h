/*
 * FreeRTOSConfig.h - FreeRTOS for the freertos-stress Keel app: what differs from the other
 * FreeRTOS examples, then their shared settings (../freertos-config-common.h).
 */
#ifndef FREERTOS_CONFIG_H
#define FREERTOS_CONFIG_H

/* A fast tick (50 us): many ticks and task switches fall while a task is in a system call. */
#define configTICK_RATE_HZ                      20000UL

/* The app's vector table is keel_crt0.c's, whose SysTick_Handler and PendSV_Handler are the
 * app's own counting shims (main.c); they jump to the port's handlers, which the Makefile
 * renames (FreeRTOS calls this "indirect routing"). */
#define configCHECK_HANDLER_INSTALLATION        0

#define configUSE_TICK_HOOK                     1 /* makes a system call from the tick ISR */

#define FREERTOS_ASSERT_FAILED                  stress_assert_failed

#include "freertos-config-common.h"

#endif /* FREERTOS_CONFIG_H */
