/*
 * freertos-config-common.h - the FreeRTOS (V11, port ARM_CM33_NTZ) settings the FreeRTOS
 * example apps share. Each app's FreeRTOSConfig.h defines what differs, then includes this:
 *   configTICK_RATE_HZ, configCHECK_HANDLER_INSTALLATION, configUSE_TICK_HOOK, and
 *   FREERTOS_ASSERT_FAILED (the app's function a failed configASSERT() calls).
 *
 * The app runs in the non-secure world; the visor owns the secure world. FreeRTOS is used
 * "non-TrustZone-aware" (ARM_CM33_NTZ): tasks call Keel's system-call veneers as plain
 * functions and the kernel knows nothing of the secure side.
 */
#ifndef FREERTOS_CONFIG_COMMON_H
#define FREERTOS_CONFIG_COMMON_H

#include <stdint.h>

#if !defined(configTICK_RATE_HZ) || !defined(configCHECK_HANDLER_INSTALLATION) || \
    !defined(configUSE_TICK_HOOK) || !defined(FREERTOS_ASSERT_FAILED)
#error "define the app's settings (see above) before including freertos-config-common.h"
#endif

/* ---- Core and port ------------------------------------------------------------------- */

/* QEMU mps2-an505: SysTick's processor clock (CLKSOURCE=1) runs at the board's 20 MHz system
 * clock in virtual time, whatever -icount says about instructions. */
#define configCPU_CLOCK_HZ                      20000000UL
#define configTICK_TYPE_WIDTH_IN_BITS           TICK_TYPE_WIDTH_32_BITS

#define configENABLE_TRUSTZONE                  0 /* the app knows nothing of the secure side */
#define configRUN_FREERTOS_SECURE_ONLY          0
#define configENABLE_MPU                        0
#define configENABLE_FPU                        0 /* built with -mfloat-abi=soft */
#define configENABLE_MVE                        0

/* Priorities as the non-secure world writes them. QEMU implements 8 priority bits, an
 * STM32U5 4: these values are valid for both (the top 3 bits, LSB clear). */
#define configPRIO_BITS                         3
#define configKERNEL_INTERRUPT_PRIORITY         255
#define configMAX_SYSCALL_INTERRUPT_PRIORITY    (5 << (8 - configPRIO_BITS))

/* ---- Scheduler ----------------------------------------------------------------------- */

#define configUSE_PREEMPTION                    1
#define configUSE_TIME_SLICING                  1
#define configUSE_PORT_OPTIMISED_TASK_SELECTION 0
#define configUSE_TICKLESS_IDLE                 0
#define configMAX_PRIORITIES                    6
#define configMINIMAL_STACK_SIZE                256 /* words */
#define configMAX_TASK_NAME_LEN                 12
#define configIDLE_SHOULD_YIELD                 1
#define configUSE_TASK_NOTIFICATIONS            1
#define configTASK_NOTIFICATION_ARRAY_ENTRIES   1
#define configUSE_MUTEXES                       0
#define configUSE_RECURSIVE_MUTEXES             0
#define configUSE_COUNTING_SEMAPHORES           0
#define configQUEUE_REGISTRY_SIZE               0
#define configUSE_QUEUE_SETS                    0
#define configUSE_NEWLIB_REENTRANT              0
#define configUSE_TIMERS                        0
#define configUSE_CO_ROUTINES                   0
#define configSTACK_DEPTH_TYPE                  uint32_t
#define configMESSAGE_BUFFER_LENGTH_TYPE        size_t

/* ---- Memory: everything static, no heap ---------------------------------------------- */

#define configSUPPORT_STATIC_ALLOCATION         1
#define configSUPPORT_DYNAMIC_ALLOCATION        0
#define configKERNEL_PROVIDED_STATIC_MEMORY     1 /* the kernel owns the idle task's memory */

/* ---- Hooks and checks ---------------------------------------------------------------- */

#define configUSE_IDLE_HOOK                     0
#define configUSE_MALLOC_FAILED_HOOK            0
#define configCHECK_FOR_STACK_OVERFLOW          2
#define configUSE_TRACE_FACILITY                0
#define configGENERATE_RUN_TIME_STATS           0
#define configUSE_STATS_FORMATTING_FUNCTIONS    0

/* A failed assertion is logged through the visor, then the app faults on purpose: the visor
 * records the crash, which the test sees at once. */
void FREERTOS_ASSERT_FAILED(const char *file, int line);
#define configASSERT(x)                                                                      \
    do {                                                                                     \
        if (!(x)) {                                                                          \
            FREERTOS_ASSERT_FAILED(__FILE__, __LINE__);                                      \
        }                                                                                    \
    } while (0)

/* ---- API subset ---------------------------------------------------------------------- */

#define INCLUDE_vTaskDelay                      1
#define INCLUDE_vTaskSuspend                    1 /* portMAX_DELAY blocks for ever */
#define INCLUDE_xTaskGetSchedulerState          1
#define INCLUDE_xTaskGetCurrentTaskHandle       1
#define INCLUDE_vTaskDelete                     0
#define INCLUDE_vTaskPrioritySet                0
#define INCLUDE_uxTaskPriorityGet               0
#define INCLUDE_uxTaskGetStackHighWaterMark     1

#endif /* FREERTOS_CONFIG_COMMON_H */
