"""Create the security group that cluster/aws.yaml names: SSH from one network you choose, all traffic between
the group's members, nothing else. Idempotent.

    python -m infra.cluster_security_group --vpc-id vpc-0abc... --ssh-cidr 203.0.113.7/32 [--name repsub-ray]

Ray's launcher, left to create its own group, opens SSH to 0.0.0.0/0; this one refuses any CIDR that spans the
whole internet. The dashboard, GCS and job API stay unreachable from outside (reach them through the SSH tunnel
of `ray dashboard`). Credentials, region and endpoint come from the standard AWS environment.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from botocore.exceptions import ClientError

EVERYWHERE = ("0.0.0.0/0", "::/0")


class SecurityGroupError(ValueError):
    """A CIDR or an existing group that would expose the cluster."""


def check_ssh_cidr(cidr: str) -> str:
    """The CIDR in canonical form; refuses one that is not a network or that admits every address."""
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise SecurityGroupError(
            f"--ssh-cidr {cidr!r} is not an IPv4/IPv6 network (e.g. 203.0.113.7/32)"
        ) from None
    if network.prefixlen == 0:
        raise SecurityGroupError(
            f"--ssh-cidr {cidr}: SSH from every address is what this group exists to avoid; give your own "
            "address (/32) or your organization's range"
        )
    return str(network)


def _ranges(permission: dict) -> list[str]:
    return [r["CidrIp"] for r in permission.get("IpRanges", [])] + [
        r["CidrIpv6"] for r in permission.get("Ipv6Ranges", [])
    ]


def ensure_cluster_security_group(ec2, vpc_id: str, ssh_cidr: str, name: str = "repsub-ray") -> str:
    """Create (or complete) the group in `vpc_id`; returns its id. Refuses a group that admits anything from
    everywhere (left from another tool): fix or rename it rather than run a cluster in it."""
    ssh_cidr = check_ssh_cidr(ssh_cidr)
    filters = [{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc_id]}]
    found = ec2.describe_security_groups(Filters=filters)["SecurityGroups"]
    if found:
        group = found[0]
        open_rules = [p for p in group["IpPermissions"] if set(_ranges(p)) & set(EVERYWHERE)]
        if open_rules:
            raise SecurityGroupError(
                f"security group {group['GroupId']} ({name}) admits traffic from everywhere "
                f"({len(open_rules)} rule(s)); remove those rules or choose another --name"
            )
        group_id = group["GroupId"]
    else:
        group_id = ec2.create_security_group(
            GroupName=name,
            VpcId=vpc_id,
            Description="repsub Ray cluster: SSH from one network, intra-cluster",
        )["GroupId"]
    rules = [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": ssh_cidr}]}
        if ":" not in ssh_cidr
        else {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "Ipv6Ranges": [{"CidrIpv6": ssh_cidr}]},
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]},  # Ray's nodes talk to each other
    ]
    for rule in rules:
        try:
            ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[rule])
        except ClientError as err:
            if err.response["Error"]["Code"] != "InvalidPermission.Duplicate":
                raise
    return group_id


def main(argv: list[str] | None = None) -> int:
    import boto3

    parser = argparse.ArgumentParser(
        prog="python -m infra.cluster_security_group", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--vpc-id", required=True)
    parser.add_argument(
        "--ssh-cidr", required=True, help="the network SSH may come from, e.g. 203.0.113.7/32"
    )
    parser.add_argument("--name", default="repsub-ray")
    parser.add_argument("--region", default=None, help="default: the AWS environment's")
    args = parser.parse_args(argv)
    try:
        group_id = ensure_cluster_security_group(
            boto3.client("ec2", region_name=args.region), args.vpc_id, args.ssh_cidr, args.name
        )
    except SecurityGroupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(group_id)
    print(f"next: sed -i 's/sg-REPLACE-WITH-YOUR-GROUP/{group_id}/' cluster/aws.yaml", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
