"""Several "hosts" on one machine for the on-prem tests: each a network namespace with its own veth address, its own
sshd (host key pinned in a known_hosts file), its own agent directory and its own fake GPUs.

Needs root, ``ip`` (iproute2), ``/usr/sbin/sshd`` (openssh-server) and gcc (the fake NVML). Network traffic goes
only to loopback and to the addresses these fixtures assign to their own namespaces.
"""
