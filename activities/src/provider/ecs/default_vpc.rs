//! The region's default VPC, for services when `--ecs-subnets` is not given (cargo feature
//! `ecs-default-vpc`: the only user of aws-sdk-ec2).

use aws_sdk_ec2::{
    operation::{
        describe_security_groups::DescribeSecurityGroupsError,
        describe_subnets::DescribeSubnetsError, describe_vpcs::DescribeVpcsError,
    },
    types::Filter,
};
use tokio::sync::OnceCell;

use super::errors::{EcsError, classify};
use crate::error::{ComputeError, Result};

// EC2 models no errors for these operations: every one arrives as `Unhandled` with its code
// (`UnauthorizedOperation`, `RequestLimitExceeded`, ...), which the table goes by.
impl EcsError for DescribeVpcsError {}
impl EcsError for DescribeSubnetsError {}
impl EcsError for DescribeSecurityGroupsError {}

/// The EC2 client and the default VPC's network, looked up once.
pub(crate) struct DefaultVpc {
    ec2: aws_sdk_ec2::Client,
    network: OnceCell<(Vec<String>, Vec<String>)>,
}

impl DefaultVpc {
    /// An EC2 client with the provider's timeouts and no SDK retries (as the ECS client).
    pub(crate) fn new(
        sdk: &aws_config::SdkConfig,
        timeouts: aws_config::timeout::TimeoutConfig,
    ) -> Self {
        let conf = aws_sdk_ec2::config::Builder::from(sdk)
            .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
            .timeout_config(timeouts)
            .build();
        DefaultVpc {
            ec2: aws_sdk_ec2::Client::from_conf(conf),
            network: OnceCell::new(),
        }
    }

    /// The default VPC's default-for-AZ subnets and its `default` security group.
    pub(crate) async fn network(&self, cluster: &str) -> Result<(Vec<String>, Vec<String>)> {
        let filter = |name: &str, value: &str| Filter::builder().name(name).values(value).build();
        self.network
            .get_or_try_init(|| async {
                let ec2 = &self.ec2;
                let vpcs = ec2
                    .describe_vpcs()
                    .filters(filter("is-default", "true"))
                    .send()
                    .await
                    .map_err(|e| classify("DescribeVpcs", &e, cluster))?;
                let vpc = vpcs
                    .vpcs()
                    .iter()
                    .find_map(|v| v.vpc_id())
                    .ok_or_else(|| {
                        ComputeError::invalid(
                            "--ecs-subnets: the region has no default VPC; give the services' subnets",
                        )
                    })?
                    .to_string();
                let subnets: Vec<String> = ec2
                    .describe_subnets()
                    .filters(filter("vpc-id", &vpc))
                    .filters(filter("default-for-az", "true"))
                    .send()
                    .await
                    .map_err(|e| classify("DescribeSubnets", &e, cluster))?
                    .subnets()
                    .iter()
                    .filter_map(|s| s.subnet_id().map(str::to_string))
                    .collect();
                if subnets.is_empty() {
                    return Err(ComputeError::invalid(
                        "--ecs-subnets: the default VPC has no default subnets; give the services' subnets",
                    ));
                }
                let groups: Vec<String> = ec2
                    .describe_security_groups()
                    .filters(filter("vpc-id", &vpc))
                    .filters(filter("group-name", "default"))
                    .send()
                    .await
                    .map_err(|e| classify("DescribeSecurityGroups", &e, cluster))?
                    .security_groups()
                    .iter()
                    .filter_map(|g| g.group_id().map(str::to_string))
                    .collect();
                tracing::info!(vpc = %vpc, subnets = ?subnets, security_groups = ?groups, "Using the default VPC for ECS services.");
                Ok((subnets, groups))
            })
            .await
            .cloned()
    }
}
