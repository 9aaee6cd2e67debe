/*
 * keel_crt0.c - start-up code and vector table for Keel apps written in C.
 *
 * Link with keel_app.ld. The visor starts the app like a reset of the non-secure world:
 * it loads MSP_NS from word 0 of the vector table at 0x00200000, programs MSPLIM_NS with
 * __keel_stack_limit (from the image header) and jumps to Reset_Handler (word 1).
 *
 * Every handler below is a weak alias of Default_Handler (an infinite loop): define a
 * function with the same name (e.g. `void SysTick_Handler(void)`, `void IRQ5_Handler(void)`)
 * to override it.
 *
 * Faults: while the visor keeps AIRCR.BFHFNMINS = 0 (the default), HardFault and BusFault
 * are handled by the visor, which writes a crash report and restarts the app, and
 * MemManage / UsageFault escalate to it too unless the app enables them in SHCSR. The
 * HardFault, MemManage, BusFault and UsageFault entries here only matter if the app changes
 * that.
 *
 * There is no libc, but GCC may emit calls to memcpy, memmove, memset and memcmp even in
 * freestanding code (e.g. for `keel_crash_report_t r = { .version = 1 };`), so small weak
 * versions of those four are defined at the end of this file.
 */
#include <stddef.h>
#include <stdint.h>

#include "keel.h"

/* Symbols from keel_app.ld. */
extern uint32_t __keel_stack_limit;
extern uint32_t __keel_stack_top;
extern uint32_t __data_start__;
extern uint32_t __data_end__;
extern uint32_t __data_load__;
extern uint32_t __bss_start__;
extern uint32_t __bss_end__;
extern void (*__preinit_array_start__[])(void);
extern void (*__preinit_array_end__[])(void);
extern void (*__init_array_start__[])(void);
extern void (*__init_array_end__[])(void);

extern int main(void);

void Reset_Handler(void) __attribute__((noreturn));
void Default_Handler(void);

#define KEEL__WEAK_HANDLER __attribute__((weak, alias("Default_Handler")))

void NMI_Handler(void) KEEL__WEAK_HANDLER;
void HardFault_Handler(void) KEEL__WEAK_HANDLER;
void MemManage_Handler(void) KEEL__WEAK_HANDLER;
void BusFault_Handler(void) KEEL__WEAK_HANDLER;
void UsageFault_Handler(void) KEEL__WEAK_HANDLER;
void SVC_Handler(void) KEEL__WEAK_HANDLER;
void DebugMon_Handler(void) KEEL__WEAK_HANDLER;
void PendSV_Handler(void) KEEL__WEAK_HANDLER;
void SysTick_Handler(void) KEEL__WEAK_HANDLER;

void IRQ0_Handler(void) KEEL__WEAK_HANDLER;
void IRQ1_Handler(void) KEEL__WEAK_HANDLER;
void IRQ2_Handler(void) KEEL__WEAK_HANDLER;
void IRQ3_Handler(void) KEEL__WEAK_HANDLER;
void IRQ4_Handler(void) KEEL__WEAK_HANDLER;
void IRQ5_Handler(void) KEEL__WEAK_HANDLER;
void IRQ6_Handler(void) KEEL__WEAK_HANDLER;
void IRQ7_Handler(void) KEEL__WEAK_HANDLER;
void IRQ8_Handler(void) KEEL__WEAK_HANDLER;
void IRQ9_Handler(void) KEEL__WEAK_HANDLER;
void IRQ10_Handler(void) KEEL__WEAK_HANDLER;
void IRQ11_Handler(void) KEEL__WEAK_HANDLER;
void IRQ12_Handler(void) KEEL__WEAK_HANDLER;
void IRQ13_Handler(void) KEEL__WEAK_HANDLER;
void IRQ14_Handler(void) KEEL__WEAK_HANDLER;
void IRQ15_Handler(void) KEEL__WEAK_HANDLER;
void IRQ16_Handler(void) KEEL__WEAK_HANDLER;
void IRQ17_Handler(void) KEEL__WEAK_HANDLER;
void IRQ18_Handler(void) KEEL__WEAK_HANDLER;
void IRQ19_Handler(void) KEEL__WEAK_HANDLER;
void IRQ20_Handler(void) KEEL__WEAK_HANDLER;
void IRQ21_Handler(void) KEEL__WEAK_HANDLER;
void IRQ22_Handler(void) KEEL__WEAK_HANDLER;
void IRQ23_Handler(void) KEEL__WEAK_HANDLER;
void IRQ24_Handler(void) KEEL__WEAK_HANDLER;
void IRQ25_Handler(void) KEEL__WEAK_HANDLER;
void IRQ26_Handler(void) KEEL__WEAK_HANDLER;
void IRQ27_Handler(void) KEEL__WEAK_HANDLER;
void IRQ28_Handler(void) KEEL__WEAK_HANDLER;
void IRQ29_Handler(void) KEEL__WEAK_HANDLER;
void IRQ30_Handler(void) KEEL__WEAK_HANDLER;
void IRQ31_Handler(void) KEEL__WEAK_HANDLER;
void IRQ32_Handler(void) KEEL__WEAK_HANDLER;
void IRQ33_Handler(void) KEEL__WEAK_HANDLER;
void IRQ34_Handler(void) KEEL__WEAK_HANDLER;
void IRQ35_Handler(void) KEEL__WEAK_HANDLER;
void IRQ36_Handler(void) KEEL__WEAK_HANDLER;
void IRQ37_Handler(void) KEEL__WEAK_HANDLER;
void IRQ38_Handler(void) KEEL__WEAK_HANDLER;
void IRQ39_Handler(void) KEEL__WEAK_HANDLER;
void IRQ40_Handler(void) KEEL__WEAK_HANDLER;
void IRQ41_Handler(void) KEEL__WEAK_HANDLER;
void IRQ42_Handler(void) KEEL__WEAK_HANDLER;
void IRQ43_Handler(void) KEEL__WEAK_HANDLER;
void IRQ44_Handler(void) KEEL__WEAK_HANDLER;
void IRQ45_Handler(void) KEEL__WEAK_HANDLER;
void IRQ46_Handler(void) KEEL__WEAK_HANDLER;
void IRQ47_Handler(void) KEEL__WEAK_HANDLER;
void IRQ48_Handler(void) KEEL__WEAK_HANDLER;
void IRQ49_Handler(void) KEEL__WEAK_HANDLER;
void IRQ50_Handler(void) KEEL__WEAK_HANDLER;
void IRQ51_Handler(void) KEEL__WEAK_HANDLER;
void IRQ52_Handler(void) KEEL__WEAK_HANDLER;
void IRQ53_Handler(void) KEEL__WEAK_HANDLER;
void IRQ54_Handler(void) KEEL__WEAK_HANDLER;
void IRQ55_Handler(void) KEEL__WEAK_HANDLER;
void IRQ56_Handler(void) KEEL__WEAK_HANDLER;
void IRQ57_Handler(void) KEEL__WEAK_HANDLER;
void IRQ58_Handler(void) KEEL__WEAK_HANDLER;
void IRQ59_Handler(void) KEEL__WEAK_HANDLER;
void IRQ60_Handler(void) KEEL__WEAK_HANDLER;
void IRQ61_Handler(void) KEEL__WEAK_HANDLER;
void IRQ62_Handler(void) KEEL__WEAK_HANDLER;
void IRQ63_Handler(void) KEEL__WEAK_HANDLER;
void IRQ64_Handler(void) KEEL__WEAK_HANDLER;
void IRQ65_Handler(void) KEEL__WEAK_HANDLER;
void IRQ66_Handler(void) KEEL__WEAK_HANDLER;
void IRQ67_Handler(void) KEEL__WEAK_HANDLER;
void IRQ68_Handler(void) KEEL__WEAK_HANDLER;
void IRQ69_Handler(void) KEEL__WEAK_HANDLER;
void IRQ70_Handler(void) KEEL__WEAK_HANDLER;
void IRQ71_Handler(void) KEEL__WEAK_HANDLER;
void IRQ72_Handler(void) KEEL__WEAK_HANDLER;
void IRQ73_Handler(void) KEEL__WEAK_HANDLER;
void IRQ74_Handler(void) KEEL__WEAK_HANDLER;
void IRQ75_Handler(void) KEEL__WEAK_HANDLER;
void IRQ76_Handler(void) KEEL__WEAK_HANDLER;
void IRQ77_Handler(void) KEEL__WEAK_HANDLER;
void IRQ78_Handler(void) KEEL__WEAK_HANDLER;
void IRQ79_Handler(void) KEEL__WEAK_HANDLER;
/* The SDK's notification line (KEEL_NOTIFY_DEFAULT_IRQ): its interrupt only wakes the core from
 * WFI, so its default handler returns at once. */
void Keel_Notify_Handler(void);
void IRQ80_Handler(void) __attribute__((weak, alias("Keel_Notify_Handler")));
void IRQ81_Handler(void) KEEL__WEAK_HANDLER;
void IRQ82_Handler(void) KEEL__WEAK_HANDLER;
void IRQ83_Handler(void) KEEL__WEAK_HANDLER;
void IRQ84_Handler(void) KEEL__WEAK_HANDLER;
void IRQ85_Handler(void) KEEL__WEAK_HANDLER;
void IRQ86_Handler(void) KEEL__WEAK_HANDLER;
void IRQ87_Handler(void) KEEL__WEAK_HANDLER;
void IRQ88_Handler(void) KEEL__WEAK_HANDLER;
void IRQ89_Handler(void) KEEL__WEAK_HANDLER;
void IRQ90_Handler(void) KEEL__WEAK_HANDLER;
void IRQ91_Handler(void) KEEL__WEAK_HANDLER;
void IRQ92_Handler(void) KEEL__WEAK_HANDLER;
void IRQ93_Handler(void) KEEL__WEAK_HANDLER;
void IRQ94_Handler(void) KEEL__WEAK_HANDLER;
void IRQ95_Handler(void) KEEL__WEAK_HANDLER;

typedef void (*keel_handler_t)(void);

/* Layout of the vector table: initial stack pointer, then 15 system exception entries and
 * 32 external interrupts (48 words, 192 bytes). */
struct keel_vector_table {
    uint32_t *initial_sp;
    keel_handler_t system[15];
    keel_handler_t irq[96];
};

_Static_assert(sizeof(struct keel_vector_table) == 112 * 4, "vector table size");

__attribute__((section(".vectors"), used))
const struct keel_vector_table __keel_vectors = {
    .initial_sp = &__keel_stack_top,
    .system = {
        Reset_Handler,      /*  1 Reset */
        NMI_Handler,        /*  2 NMI */
        HardFault_Handler,  /*  3 HardFault */
        MemManage_Handler,  /*  4 MemManage */
        BusFault_Handler,   /*  5 BusFault */
        UsageFault_Handler, /*  6 UsageFault */
        0,                  /*  7 SecureFault (secure world only) */
        0,                  /*  8 reserved */
        0,                  /*  9 reserved */
        0,                  /* 10 reserved */
        SVC_Handler,        /* 11 SVCall */
        DebugMon_Handler,   /* 12 DebugMonitor */
        0,                  /* 13 reserved */
        PendSV_Handler,     /* 14 PendSV */
        SysTick_Handler,    /* 15 SysTick */
    },
    .irq = {
        IRQ0_Handler,  IRQ1_Handler,  IRQ2_Handler,  IRQ3_Handler,
        IRQ4_Handler,  IRQ5_Handler,  IRQ6_Handler,  IRQ7_Handler,
        IRQ8_Handler,  IRQ9_Handler,  IRQ10_Handler, IRQ11_Handler,
        IRQ12_Handler, IRQ13_Handler, IRQ14_Handler, IRQ15_Handler,
        IRQ16_Handler, IRQ17_Handler, IRQ18_Handler, IRQ19_Handler,
        IRQ20_Handler, IRQ21_Handler, IRQ22_Handler, IRQ23_Handler,
        IRQ24_Handler, IRQ25_Handler, IRQ26_Handler, IRQ27_Handler,
        IRQ28_Handler, IRQ29_Handler, IRQ30_Handler, IRQ31_Handler,
        IRQ32_Handler, IRQ33_Handler, IRQ34_Handler, IRQ35_Handler,
        IRQ36_Handler, IRQ37_Handler, IRQ38_Handler, IRQ39_Handler,
        IRQ40_Handler, IRQ41_Handler, IRQ42_Handler, IRQ43_Handler,
        IRQ44_Handler, IRQ45_Handler, IRQ46_Handler, IRQ47_Handler,
        IRQ48_Handler, IRQ49_Handler, IRQ50_Handler, IRQ51_Handler,
        IRQ52_Handler, IRQ53_Handler, IRQ54_Handler, IRQ55_Handler,
        IRQ56_Handler, IRQ57_Handler, IRQ58_Handler, IRQ59_Handler,
        IRQ60_Handler, IRQ61_Handler, IRQ62_Handler, IRQ63_Handler,
        IRQ64_Handler, IRQ65_Handler, IRQ66_Handler, IRQ67_Handler,
        IRQ68_Handler, IRQ69_Handler, IRQ70_Handler, IRQ71_Handler,
        IRQ72_Handler, IRQ73_Handler, IRQ74_Handler, IRQ75_Handler,
        IRQ76_Handler, IRQ77_Handler, IRQ78_Handler, IRQ79_Handler,
        IRQ80_Handler, IRQ81_Handler, IRQ82_Handler, IRQ83_Handler,
        IRQ84_Handler, IRQ85_Handler, IRQ86_Handler, IRQ87_Handler,
        IRQ88_Handler, IRQ89_Handler, IRQ90_Handler, IRQ91_Handler,
        IRQ92_Handler, IRQ93_Handler, IRQ94_Handler, IRQ95_Handler,
    },
};

__attribute__((weak)) void Keel_Notify_Handler(void)
{
}

/* Unhandled exception or interrupt: stop here (the app watchdog, if armed, ends the hang; the visor resets the system to clear the
 * active exception)). */
__attribute__((weak)) void Default_Handler(void)
{
    for (;;) {
    }
}

void Reset_Handler(void)
{
    /* Belt and braces: the visor already programs MSPLIM_NS from the image header. */
    __asm__ volatile("msr msplim, %0" : : "r"(&__keel_stack_limit));

    /* The copy and zero loops go through volatile pointers so the compiler cannot turn them
     * into memcpy/memset calls (there is no libc). */
    const uint32_t *src = &__data_load__;
    volatile uint32_t *dst = &__data_start__;
    while (dst < &__data_end__) {
        *dst++ = *src++;
    }
    for (volatile uint32_t *p = &__bss_start__; p < &__bss_end__; p++) {
        *p = 0;
    }

    for (void (**f)(void) = __preinit_array_start__; f < __preinit_array_end__; f++) {
        (*f)();
    }
    for (void (**f)(void) = __init_array_start__; f < __init_array_end__; f++) {
        (*f)();
    }

    (void)main();

    /* main returned: ask the visor to restart the app. */
    for (;;) {
        (void)keel_restart(0);
    }
}

/* ---- The four functions GCC requires of a freestanding environment (weak: an app may
 * provide faster ones). Stores go through volatile pointers so the compiler cannot turn
 * these loops back into calls to themselves. ---- */

__attribute__((weak)) void *memset(void *s, int c, size_t n)
{
    volatile unsigned char *d = s;
    while (n-- > 0) {
        *d++ = (unsigned char)c;
    }
    return s;
}

__attribute__((weak)) void *memcpy(void *restrict dst, const void *restrict src, size_t n)
{
    volatile unsigned char *d = dst;
    const unsigned char *s = src;
    while (n-- > 0) {
        *d++ = *s++;
    }
    return dst;
}

__attribute__((weak)) void *memmove(void *dst, const void *src, size_t n)
{
    volatile unsigned char *d = dst;
    const unsigned char *s = src;
    if ((uintptr_t)d <= (uintptr_t)s || (uintptr_t)d >= (uintptr_t)s + n) {
        while (n-- > 0) {
            *d++ = *s++;
        }
    } else {
        while (n-- > 0) {
            d[n] = s[n];
        }
    }
    return dst;
}

__attribute__((weak)) int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a;
    const unsigned char *y = b;
    for (; n > 0; n--, x++, y++) {
        if (*x != *y) {
            return (int)*x - (int)*y;
        }
    }
    return 0;
}
