"""Deployment of cd2_replica on Amazon MWAA: the bundle, the startup script, the CloudFormation stacks."""
