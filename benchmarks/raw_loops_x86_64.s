# Raw system-call loops for `benchmarks peer-targets` (peer_targets.RAW_LOOPS_X86_64 holds these
# bytes; tests/benchmarks/test_peer_targets.py assembles this file with GNU as and compares).
# System V AMD64 ABI; no calls, no stack use beyond the saved registers; each returns how many of
# its system calls failed (a negative return), so that a refused or blocked call is seen, never timed.
#   as raw_loops_x86_64.s -o l.o && objcopy -O binary -j .text l.o l.bin
    .intel_syntax noprefix
    .text
    .globl sock_loop
# long sock_loop(long n, long fd_a, long fd_b, void *buf): n x (sendto(fd_a, buf, 1, 0, 0, 0); recvfrom(fd_b, buf, 1, 0, 0, 0)); returns the calls that failed
sock_loop:
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov rbx, rdi
    mov r12, rsi
    mov r13, rdx
    mov r14, rcx
    xor r15d, r15d
1:
    mov eax, 44
    mov rdi, r12
    mov rsi, r14
    mov edx, 1
    xor r10d, r10d
    xor r8d, r8d
    xor r9d, r9d
    syscall
    shr rax, 63
    add r15, rax
    mov eax, 45
    mov rdi, r13
    mov rsi, r14
    mov edx, 1
    xor r10d, r10d
    xor r8d, r8d
    xor r9d, r9d
    syscall
    shr rax, 63
    add r15, rax
    dec rbx
    jnz 1b
    mov rax, r15
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    ret
    .globl open_loop
# long open_loop(long n, const char *path, void *buf): n x (fd = openat(AT_FDCWD, path, O_RDONLY|O_CLOEXEC); read(fd, buf, 4096); close(fd)); returns the calls that failed
open_loop:
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov rbx, rdi
    mov r12, rsi
    mov r13, rdx
    xor r15d, r15d
2:
    mov eax, 257
    mov rdi, -100
    mov rsi, r12
    mov edx, 0x80000
    xor r10d, r10d
    syscall
    mov r14, rax
    shr rax, 63
    add r15, rax
    xor eax, eax
    mov rdi, r14
    mov rsi, r13
    mov edx, 4096
    syscall
    shr rax, 63
    add r15, rax
    mov eax, 3
    mov rdi, r14
    syscall
    shr rax, 63
    add r15, rax
    dec rbx
    jnz 2b
    mov rax, r15
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    ret
