/*
 * FreeRTOSConfig.h - FreeRTOS for the freertos-channels Keel app: what differs from the other
 * FreeRTOS examples, then their shared settings (../freertos-config-common.h).
 */
#ifndef FREERTOS_CONFIG_H
#define FREERTOS_CONFIG_H

/* A 1 ms tick. */
#define configTICK_RATE_HZ                      1000UL

/* The port's SVC_Handler, PendSV_Handler and SysTick_Handler are the vector table's own (they
 * override keel_crt0.c's weak defaults), so the kernel may check them. */
#define configCHECK_HANDLER_INSTALLATION        1

#define configUSE_TICK_HOOK                     0

#define FREERTOS_ASSERT_FAILED                  channels_assert_failed

#include "freertos-config-common.h"

#endif /* FREERTOS_CONFIG_H */
