use stash_macros::lifecycle;

#[lifecycle(name = "Demo", events(Start, Fail))]
pub enum Phase {
    #[initial]
    #[on(Start => Runing, Fail => Failed)]
    Pending,
    #[terminal]
    Failed,
}

fn main() {}
