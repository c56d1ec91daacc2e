"""Network: the VPC an EKS cluster lives in (public subnets for NAT and load balancers, private for nodes)."""

from __future__ import annotations

import ipaddress
from typing import TypedDict

import pulumi
import pulumi_aws as aws


class NetworkArgs(TypedDict):
    """The VPC's address range and how many availability zones it spans."""

    cidr: str
    availability_zones: int
    cluster_name: pulumi.Input[str]


def subnet_cidrs(cidr: str, zones: int) -> tuple[list[str], list[str]]:
    """(public, private) subnet ranges: small public /24-ish slices, large private ones, never overlapping."""
    network = ipaddress.IPv4Network(cidr)
    # Split into 8 equal blocks: the first `zones` are private (nodes and pods need the room), the last
    # block is cut again for the small public subnets (NAT gateways and load balancers only).
    blocks = list(network.subnets(prefixlen_diff=3))
    private = [str(block) for block in blocks[:zones]]
    public = [str(block) for block in list(blocks[-1].subnets(prefixlen_diff=2))[:zones]]
    return public, private


class Network(pulumi.ComponentResource):
    """A VPC with one public and one private subnet per zone and a NAT gateway for private egress."""

    vpc_id: pulumi.Output[str]
    public_subnet_ids: pulumi.Output[list[str]]
    private_subnet_ids: pulumi.Output[list[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        if not 2 <= args["availability_zones"] <= 4:
            raise ValueError(f"availability_zones must be 2 to 4, got {args['availability_zones']}")
        super().__init__("lockgate:network:Network", name, None, opts)
        public_cidrs, private_cidrs = subnet_cidrs(args["cidr"], args["availability_zones"])
        child = pulumi.ResourceOptions(parent=self)
        zones = aws.get_availability_zones_output(state="available").names
        cluster_tag = pulumi.Output.concat("kubernetes.io/cluster/", args["cluster_name"])
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args["cidr"],
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={"Name": f"{name}-vpc"},
            opts=child,
        )
        # The default security group of a new VPC allows all traffic between its members: empty it.
        aws.ec2.DefaultSecurityGroup(f"{name}-default-sg", vpc_id=vpc.id, opts=child)
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, opts=child)
        public_routes = aws.ec2.RouteTable(
            f"{name}-public-rt",
            vpc_id=vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}],
            opts=child,
        )
        public_ids, private_ids = [], []
        for index, (public_cidr, private_cidr) in enumerate(zip(public_cidrs, private_cidrs, strict=True)):
            zone = zones[index]
            public = aws.ec2.Subnet(
                f"{name}-public-{index}",
                vpc_id=vpc.id,
                cidr_block=public_cidr,
                availability_zone=zone,
                map_public_ip_on_launch=False,
                tags=cluster_tag.apply(lambda tag: {tag: "shared", "kubernetes.io/role/elb": "1"}),
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{index}", subnet_id=public.id, route_table_id=public_routes.id, opts=child
            )
            private = aws.ec2.Subnet(
                f"{name}-private-{index}",
                vpc_id=vpc.id,
                cidr_block=private_cidr,
                availability_zone=zone,
                tags=cluster_tag.apply(lambda tag: {tag: "shared", "kubernetes.io/role/internal-elb": "1"}),
                opts=child,
            )
            public_ids.append(public.id)
            private_ids.append(private)
        address = aws.ec2.Eip(f"{name}-nat-ip", domain="vpc", opts=child)
        nat = aws.ec2.NatGateway(
            f"{name}-nat",
            allocation_id=address.id,
            subnet_id=public_ids[0],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[gateway]),
        )
        private_routes = aws.ec2.RouteTable(
            f"{name}-private-rt",
            vpc_id=vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}],
            opts=child,
        )
        for index, private in enumerate(private_ids):
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{index}", subnet_id=private.id, route_table_id=private_routes.id, opts=child
            )
        self.vpc_id = vpc.id
        self.public_subnet_ids = pulumi.Output.all(*public_ids)
        self.private_subnet_ids = pulumi.Output.all(*[subnet.id for subnet in private_ids])
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "public_subnet_ids": self.public_subnet_ids,
                "private_subnet_ids": self.private_subnet_ids,
            }
        )
