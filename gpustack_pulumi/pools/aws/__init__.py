"""AWS GPU node pools: EC2 GPU instances in an Auto Scaling group sized by the cluster's plan.

``render`` holds the pure functions (launch template, boot script, security group rules, IAM documents, planned
capacity, sizing); ``quota`` the boto3 side (quotas, offerings, discovery); ``provider`` the dynamic providers;
``cost`` the $/h report section; ``component`` :class:`AwsGpuNodePool`. pulumi_aws is imported only when a pool
is created.
"""

from gpustack_pulumi.pools.aws.component import AwsGpuNodePool, AwsGpuNodePoolArgs

__all__ = ["AwsGpuNodePool", "AwsGpuNodePoolArgs"]
